"""The admin-API plumbing both servers use: bearer tokens and who may call, admin requests as changes
with their schemas, the OpenAPI document, views of the routing state. Pure functions over plain data: the
servers (aiohttp) stay in ``proxy.admin`` and ``controller.api``."""
