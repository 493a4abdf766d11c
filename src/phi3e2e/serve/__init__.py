"""`phi3e2e serve`: the project's int4 models behind an OpenAI-compatible HTTP API, plus a playground page.

  catalog.py    which models a project offers (finished runs, their base int4 builds) and held-out examples
  registry.py   models loaded on first use, kept within a memory budget
  scheduler.py  the one thread that generates: answers waiting together decode as a batch, batches take turns
  stops.py      `stop` sequences cut out of a streamed answer
  schemas.py    the request bodies, checked, as OpenAI names their fields
  completions.py  /v1/chat/completions and /v1/completions: a request -> a job -> a JSON answer or server-sent events
  guard.py      API key and body size limit, on every request
  access.py     one log line per request (serve --quiet: none)
  app.py        the FastAPI app: routes and OpenAI-style errors
  server.py     host/port/key checks, then uvicorn
  static/       the playground page (plain HTML/JS/CSS, nothing fetched from the internet)

FastAPI and uvicorn are imported only here, so `phi3e2e --help` stays fast.
"""
