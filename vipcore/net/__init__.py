"""The only user of netlink (pyroute2) and AF_PACKET: addresses on interfaces, interface facts,
gratuitous ARP and unsolicited Neighbour Advertisements."""
