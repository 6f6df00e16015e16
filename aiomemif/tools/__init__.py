"""What is not memif but comes with it: packet builders and parsers (``packets``: Ethernet,
ARP, IPv4, ICMP, UDP) and a pcapng writer (``pcapng``). They import nothing from the rest of
aiomemif except received-packet types from :mod:`aiomemif._core.buffers`.
"""
