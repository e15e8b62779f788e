"""``threegen serve``: SN17's miner batch API (SN17-NOW.md section 4) on top of the project's pipeline.

- ``batch.py``: the requests (validated at the edge), the batch state machine and its persisted state;
- ``results.py``: the results ZIP, streamed, within the published limits;
- ``pipeline.py``: one prompt through the round pipeline's job, recorded in the Dagster instance;
- ``http.py``: the FastAPI app on uvicorn, the worker's server framework (``worker_http.py``);
- ``command.py``: the CLI command.
"""
