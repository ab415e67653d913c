"""`aigc serve`: a checkpoint behind an OpenAI-compatible HTTP API.

requests.py (the request bodies and OpenAI-shaped errors; no torch), engine.py (the decode worker:
one thread owns the model and decodes every request in one batch), api.py (the FastAPI app:
routes, server-sent events, API key), server.py (the verb: checks, socket, model, uvicorn).
"""
