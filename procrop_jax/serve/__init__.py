"""`procrop serve`: the cropper as an HTTP service with dynamic batching.

Libraries, chosen for being small, widely used and actively kept:
- Starlette (ASGI routing, requests, responses, multipart parsing through python-multipart)
  and Uvicorn (the HTTP server): Uvicorn handles SIGTERM as a load balancer expects (stop
  accepting, finish the requests in flight, run the app's shutdown, exit 0), and Starlette's
  in-process TestClient lets the tests drive every route without a socket. A heavier framework
  (FastAPI) would add request models we do not need; aiohttp would do the same job with its own
  server and no ASGI.
- prometheus_client: the reference implementation of the Prometheus text format.

Modules: app.py (routes, admission, time limits), batcher.py (the model thread and its
batches), limits.py (body, content type, pixels, capacity), options.py (query and form
options), metrics.py, page.py (the web page at /), errors.py (JSON errors), cli.py (flags).
"""
