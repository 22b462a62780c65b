"""The application layer between the HTTP API and the engines.

``api/`` parses requests and maps :mod:`service.domain.errors` to HTTP once; everything a request
*means* lives here: which stored profile it names (``profiles``), what the engine must do
(``planning``), how responses are scored (``scoring``), and the generation use case that ties them
to the engine worker (``generation``). Nothing here imports FastAPI.
"""
