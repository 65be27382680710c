"""The forwarding hot path: uvloop ``asyncio.Protocol``s on httptools (client side, one exchange,
upstream side and its pools, HTTP/1.1 helpers). It sees its process only through ``context``."""
