"""RouterDriver's steady advert path (Router.periodic straight to the link) keeps the machine's rules."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable

from vipcore.core.model import Family, IPAddress
from vipcore.net.addresses import AnnounceSchedule
from vipcore_native_vrrp.driver import RouterDriver
from vipcore_native_vrrp.protocol import Phase, Router, RouterConfig, Send
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
