"""RouterDriver's steady advert path (Router.periodic straight to the link) keeps the machine's rules."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterable

import pytest

from vipcore.core.model import Family, IPAddress, State
from vipcore.net.addresses import AnnounceSchedule
from vipcore_native_vrrp.driver import RouterDriver
from vipcore_native_vrrp.protocol import Phase, Router, RouterConfig, Send, StateChanged
from vipcore_native_vrrp.timers import TimerBatch
from vipcore_native_vrrp.transport import Handler, LinkCounters

VIP = ipaddress.IPv4Address("203.0.113.7")


class FlakyLink:
    """A link whose sends fail while ``failing`` is set (a downed interface)."""

    def __init__(self) -> None:
        self.handlers: dict[int, Handler] = {}
        self.counters = LinkCounters()
        self.failing = False
        self.attempts = 0
        self.sent: list[bytes] = []
        self.queued = 0

    def send(self, data: bytes, src: IPAddress, dst: IPAddress, failed: Callable[[], None] | None = None) -> bool:
        self.attempts += 1
        if self.failing:
            return False
        self.sent.append(data)
        return True

    def queue(self, send: Send, failed: Callable[[], None]) -> None:
        # As the real link: sent at the end of the loop pass, a failure reported then.
        self.queued += 1

        def flush() -> None:
            if not self.send(send.data, send.src, send.dst):
                failed()

        asyncio.get_running_loop().call_soon(flush)


class Holder:
    """Notes the address work the driver carries out."""

    def __init__(self) -> None:
        self.added: list[tuple[IPAddress, ...]] = []

    async def add(self, interface: str, vips: tuple[IPAddress, ...]) -> None:
        self.added.append(vips)

    async def remove(self, interface: str, vips: tuple[IPAddress, ...]) -> None:
        pass


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition`` (a loaded machine may stall the loop: no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_a_master_whose_sends_fail_and_work_again_puts_its_vips_back() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        link, holder = FlakyLink(), Holder()
        config = RouterConfig(
            vrid=9, family=Family.IPV4, primary=ipaddress.IPv4Address("198.51.100.9"), vips=(VIP,),
            priority=200, interval_cs=1, destinations=(ipaddress.IPv4Address("224.0.0.18"),),
        )
        driver = RouterDriver(group="g", interface="eth0", router=Router(config), link=link,  # type: ignore[arg-type]
                              holder=holder, schedule=AnnounceSchedule(count=0),  # type: ignore[arg-type]
                              report=lambda *a: None, loop=loop, batch=TimerBatch(loop))
        driver.start()
        driver.takeover("test")
        await until(lambda: holder.added == [(VIP,)] and len(link.sent) >= 3)  # steady: an advert every 10 ms
        link.failing = True
        failing_from = link.attempts
        await until(lambda: link.attempts >= failing_from + 3)  # it keeps trying every interval
        assert holder.added == [(VIP,)], "nothing to put back while sends fail"
        link.failing = False
        await until(lambda: len(holder.added) == 2)
        assert holder.added == [(VIP,), (VIP,)], "sending works again: the VIPs are put back"
        steady = len(link.sent)
        await until(lambda: len(link.sent) >= steady + 3)
        assert holder.added == [(VIP,), (VIP,)], "once"
        assert driver.router.phase is Phase.MASTER
        await driver.close()

    asyncio.run(scenario())


def master_driver(loop: asyncio.AbstractEventLoop, link: FlakyLink, holder: Holder) -> RouterDriver:
    config = RouterConfig(
        vrid=9, family=Family.IPV4, primary=ipaddress.IPv4Address("198.51.100.9"), vips=(VIP,),
        priority=200, interval_cs=1, destinations=(ipaddress.IPv4Address("224.0.0.18"),),
    )
    return RouterDriver(group="g", interface="eth0", router=Router(config), link=link,  # type: ignore[arg-type]
                        holder=holder, schedule=AnnounceSchedule(count=0),  # type: ignore[arg-type]
                        report=lambda *a: None, loop=loop, batch=TimerBatch(loop))


def test_the_steady_masters_adverts_are_queued_on_the_link() -> None:
    # The link sends a loop pass's queued adverts with one system call (transport.py): the steady master's
    # periodic advert takes that way, every interval.
    async def scenario() -> None:
        link, holder = FlakyLink(), Holder()
        driver = master_driver(asyncio.get_running_loop(), link, holder)
        driver.start()
        driver.takeover("test")
        await until(lambda: len(link.sent) >= 5)
        assert link.queued >= len(link.sent) - 2, (link.queued, len(link.sent))  # all but the takeover's own
        await driver.close()

    asyncio.run(scenario())


class LateFailingLink(FlakyLink):
    """Reports a queued advert's failure 20 ms later (after the driver closed, in the test below)."""

    def queue(self, send: Send, failed: Callable[[], None]) -> None:
        self.queued += 1
        if not self.send(send.data, send.src, send.dst):
            asyncio.get_running_loop().call_later(0.02, failed)


def test_an_advert_that_fails_after_its_driver_closed_arms_nothing() -> None:
    async def scenario() -> None:
        link, holder = LateFailingLink(), Holder()
        driver = master_driver(asyncio.get_running_loop(), link, holder)
        driver.start()
        driver.takeover("test")
        await until(lambda: len(link.sent) >= 2)
        link.failing = True
        queued = link.queued
        await until(lambda: link.queued > queued)  # one queued: it fails at the end of this pass
        await driver.close()
        await asyncio.sleep(0.05)  # the failure came back after the close
        attempts = link.attempts
        await asyncio.sleep(0.05)  # five intervals
        assert driver._timer is None and link.attempts == attempts, "no timer re-armed, no advert after the close"

    asyncio.run(scenario())


class WaitingLink(FlakyLink):
    """While ``waiting``, a direct send waits behind queued adverts for a full send buffer (as the real link):
    accepted, its failure reported later, by the test, through the callback given with it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = False
        self.waiting_failures: list[Callable[[], None]] = []

    def send(self, data: bytes, src: IPAddress, dst: IPAddress, failed: Callable[[], None] | None = None) -> bool:
        if not self.waiting:
            return super().send(data, src, dst, failed)
        self.attempts += 1
        if failed is not None:
            self.waiting_failures.append(failed)
        return True


def test_a_direct_advert_that_waited_for_the_send_buffer_and_failed_reaches_the_router() -> None:
    # The takeover's advert goes by the direct path; the link accepts it behind adverts waiting for the send
    # buffer and refuses it later: the router must hear it as it hears a failure reported at once (its VIPs
    # put back once sending works again), or send() returning True would hide the failure.
    async def scenario() -> None:
        link, holder = WaitingLink(), Holder()
        driver = master_driver(asyncio.get_running_loop(), link, holder)
        driver.start()
        link.waiting = True
        driver.takeover("test")
        await until(lambda: holder.added == [(VIP,)])
        assert len(link.waiting_failures) == 1, "the takeover's advert, with the failure callback"
        link.waiting = False
        link.waiting_failures.pop()()
        await until(lambda: len(holder.added) == 2)
        assert holder.added == [(VIP,), (VIP,)], "sending works again: the VIPs are put back"
        assert driver.router.phase is Phase.MASTER
        await driver.close()

    asyncio.run(scenario())


def test_a_backup_follows_its_master_while_heard_and_takes_over_one_master_down_interval_after() -> None:
    """The backup's Master_Down timer, pushed out by every advert, fires early and is only re-armed; once the
    adverts stop it fires at the machine's time (never late: the takeover within Master_Down_Interval)."""
    from vipcore_native_vrrp.protocol import Advertisement, encode

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        link, holder = FlakyLink(), Holder()
        group, master = ipaddress.IPv4Address("224.0.0.18"), ipaddress.IPv4Address("198.51.100.8")
        config = RouterConfig(
            vrid=9, family=Family.IPV4, primary=ipaddress.IPv4Address("198.51.100.9"), vips=(VIP,),
            priority=100, interval_cs=10, destinations=(group,),
        )
        driver = RouterDriver(group="g", interface="eth0", router=Router(config), link=link,  # type: ignore[arg-type]
                              holder=holder, schedule=AnnounceSchedule(count=0),  # type: ignore[arg-type]
                              report=lambda *a: None, loop=loop, batch=TimerBatch(loop))
        driver.start()
        advert = encode(Advertisement(9, 200, 10, (VIP,)), master, group)
        began = loop.time()
        while loop.time() - began < 1.0:  # ~3 Master_Down_Intervals (0.36 s) of adverts every 20 ms
            driver._on_packet(advert, master, group, 255)
            await asyncio.sleep(0.02)
            assert driver.router.phase is Phase.BACKUP and not link.sent, "a heard master keeps us backup"
        silent = loop.time()
        await until(lambda: driver.router.phase is Phase.MASTER)
        took = loop.time() - silent
        assert took <= driver.router.master_down_interval + driver.router.rank_delay + 0.2, took
        await until(lambda: holder.added == [(VIP,)])
        await driver.close()

    asyncio.run(scenario())


class ClaimHolder:
    """Queues each change when asked and answers them when sent (``send_queued``, as the kernel does inside
    the ``sendmsg``), or later (``answer``: a slow kernel)."""

    def __init__(self) -> None:
        self.held: set[IPAddress] = set()
        self.asked: list[tuple[bool, tuple[IPAddress, ...]]] = []
        self.queued: list[tuple[bool, tuple[IPAddress, ...], asyncio.Future[tuple[IPAddress, ...]]]] = []
        self.announced: list[tuple[IPAddress, ...]] = []

    def _ask(self, add: bool, vips: Iterable[IPAddress]) -> asyncio.Future[tuple[IPAddress, ...]]:
        done: asyncio.Future[tuple[IPAddress, ...]] = asyncio.get_running_loop().create_future()
        self.asked.append((add, tuple(vips)))
        self.queued.append((add, tuple(vips), done))
        return done

    def add(self, interface: str, vips: Iterable[IPAddress]) -> asyncio.Future[tuple[IPAddress, ...]]:
        return self._ask(True, vips)

    def add_now(self, interface: str, vips: Iterable[IPAddress]) -> asyncio.Future[tuple[IPAddress, ...]]:
        return self._ask(True, vips)

    def remove(self, interface: str, vips: Iterable[IPAddress]) -> asyncio.Future[tuple[IPAddress, ...]]:
        return self._ask(False, vips)

    def send_queued(self) -> bool:
        queued, self.queued = self.queued, []
        for add, vips, done in queued:
            (self.held.update if add else self.held.difference_update)(vips)
            done.set_result(vips)
        return bool(queued)

    def announce_now(self, interface: str, vips: Iterable[IPAddress]) -> bool:
        self.announced.append(tuple(vips))
        return True

    async def announce(self, interface: str, vips: Iterable[IPAddress]) -> None:
        self.announce_now(interface, vips)


def claim_driver(loop: asyncio.AbstractEventLoop, holder: ClaimHolder,
                 reports: list[tuple[StateChanged, float | None]]) -> RouterDriver:
    """A backup following 198.51.100.8's adverts."""
    from vipcore_native_vrrp.protocol import Advertisement, encode

    group, master = ipaddress.IPv4Address("224.0.0.18"), ipaddress.IPv4Address("198.51.100.8")
    config = RouterConfig(vrid=9, family=Family.IPV4, primary=ipaddress.IPv4Address("198.51.100.9"), vips=(VIP,),
                          priority=100, interval_cs=100, destinations=(group,))
    driver = RouterDriver(group="g", interface="eth0", router=Router(config), link=FlakyLink(),  # type: ignore[arg-type]
                          holder=holder, schedule=AnnounceSchedule(count=1),  # type: ignore[arg-type]
                          report=lambda d, change, failover: reports.append((change, failover)), loop=loop)
    driver.start()
    driver._on_packet(encode(Advertisement(9, 200, 100, (VIP,)), master, group), master, group, 255)
    assert driver.router.phase is Phase.BACKUP
    return driver


def test_a_claimed_takeover_counts_elect_to_the_claim_and_address_from_it() -> None:
    """The coordinator's pass claims a backup's VIPs (in the kernel and announced) before its machine decides:
    the takeover adopts them (asked once, announced once), and its phases stay in order and truthful — elect
    from the loss read to the claim, address from the claim to the kernel's answer, announce from there;
    none negative, the total within the failover reported."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        holder, reports = ClaimHolder(), []
        driver = claim_driver(loop, holder, reports)
        read = loop.time() - 0.01  # the loss was read 10 ms ago (the pass's earlier work)
        assert driver.claim(read)
        assert holder.asked == [(True, (VIP,))] and driver.router.phase is Phase.BACKUP
        assert holder.send_queued()
        assert driver.announce_claim() and holder.announced == [(VIP,)]
        held: list[Callable[[], None]] = []
        driver.peer_lost(0.0, "liveness session down", silent_for=0.05, held=held)
        assert driver.router.phase is Phase.MASTER and len(held) == 1
        assert driver.release_claim() is False  # adopted: nothing undone
        for send in held:
            send()
        await driver.settled()
        await asyncio.sleep(0)  # the report goes after the pass
        assert holder.asked == [(True, (VIP,))] and holder.announced == [(VIP,)]  # no second add, no second burst
        change, failover = reports[-1]
        assert change.new is State.MASTER
        phases = change.phases
        assert phases is not None and None not in (phases.detect, phases.elect, phases.address, phases.announce)
        assert phases.detect == pytest.approx(0.05, abs=0.002)
        assert 0.01 <= phases.elect < 0.05  # type: ignore[operator]
        assert 0.0 <= phases.address < 0.05 and 0.0 <= phases.announce < 0.05  # type: ignore[operator]
        assert failover is not None and phases.total is not None and phases.total <= failover + 1e-6
        await driver.close()

    asyncio.run(scenario())


def test_a_claim_the_kernel_answers_late_is_awaited_by_the_takeover_and_announced_by_it() -> None:
    """The pass's batch was not answered in the pass (the kernel slow, the channel in use): no early
    announcement; the takeover awaits the same claim (no second add), announces once the kernel answered,
    and its address phase runs from the claim to that answer."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        holder, reports = ClaimHolder(), []
        driver = claim_driver(loop, holder, reports)
        assert driver.claim(loop.time())
        assert driver.announce_claim() is False  # not answered
        driver.peer_lost(0.0, "liveness session down", silent_for=0.05, held=[])
        assert driver.router.phase is Phase.MASTER and driver.release_claim() is False
        await asyncio.sleep(0.03)
        assert holder.announced == []
        assert holder.send_queued()
        await driver.settled()
        await asyncio.sleep(0)
        assert holder.asked == [(True, (VIP,))] and holder.announced == [(VIP,)]
        phases = reports[-1][0].phases
        assert phases is not None and phases.address is not None and phases.announce is not None
        assert 0.03 <= phases.address < 0.5 and phases.announce >= 0.0
        await driver.close()

    asyncio.run(scenario())


def test_a_claim_no_takeover_adopted_is_removed() -> None:
    """A claimed backup that did not take over (here: the master was heard again before the decision, so the
    router was never told): its claim is undone, the VIPs removed, never held by a backup."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        holder, reports = ClaimHolder(), []
        driver = claim_driver(loop, holder, reports)
        assert driver.claim(loop.time())
        assert holder.send_queued() and driver.announce_claim()
        assert VIP in holder.held
        assert driver.release_claim() is True
        assert holder.asked[-1] == (False, (VIP,)) and holder.send_queued()
        assert VIP not in holder.held and driver.router.phase is Phase.BACKUP
        assert driver.claim(loop.time())  # a later pass may claim again
        await driver.close()

    asyncio.run(scenario())
