"""Where a callback may go: the allow-list of hosts, and the networks it may never reach.

Checked on the URL (the gateway answers 400 at submission; the worker refuses before sending, for calls
published straight to NATS) and again on the address actually connected to, through the HTTP client's
socket factory: a host name that resolves, or is rebound, to a metadata address is refused as well.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohappyeyeballs.types import AddrInfoType

# Link-local (the cloud metadata services live there: 169.254.169.254, fd00:ec2::254) and Alibaba's.
DEFAULT_BLOCKED_NETWORKS = "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(OSError):
    """A connection to an address callbacks may not reach (an OSError: the HTTP client treats it as refused)."""


@dataclass(frozen=True)
class Egress:
    allowed_hosts: frozenset[str] = frozenset()  # empty: any host
    blocked: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, hosts: str, blocked: str) -> Egress:
        """From the comma-separated settings; raises ValueError naming a bad network."""
        networks = []
        for text in (n.strip() for n in blocked.split(",")):
            if text:
                try:
                    networks.append(ipaddress.ip_network(text, strict=False))
                except ValueError:
                    raise ValueError(f"{text!r} is not a network (CIDR, e.g. 169.254.0.0/16)") from None
        return cls(frozenset(h.strip().lower() for h in hosts.split(",") if h.strip()), tuple(networks))

    def url_problem(self, url: str, header: str = "X-Callback-Url") -> str | None:
        """Why a callback URL is refused, or None; `header` names it in the reason."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"{header} must be an absolute http:// or https:// URL"
        if any(c in url for c in "\r\n "):
            return f"{header} must not contain spaces or line breaks"
        host = parts.hostname.lower()
        if self.allowed_hosts and host not in self.allowed_hosts:
            return f"{header} host {host!r} is not in the allowed callback hosts"
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return None  # a name: its addresses are checked when connecting
        return self.address_problem(literal)

    def address_problem(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for network in self.blocked:
            if address.version == network.version and address in network:
                return f"callback address {address} is in the blocked network {network}"
        return None

    def socket_factory(self, addr_info: AddrInfoType) -> socket.socket:
        """For aiohttp's TCPConnector: refuse before connecting to a blocked address."""
        family, type_, proto, _, sockaddr = addr_info
        if problem := self.address_problem(ipaddress.ip_address(sockaddr[0])):
            raise EgressRefused(problem)
        return socket.socket(family=family, type=type_, proto=proto)
