"""The self-audit and the duel estimate (SN17-NOW.md sections 4 and 5), without Dagster:

- ``client.py``: one server of the miner batch API, every answer bounded (the results ZIP within its limits);
- ``driver.py``: the validators' audit run against it (batches, polling, pods, repeats, verdict);
- ``compare.py``: the regenerated outputs against the published ones (bytes, judge-style renders);
- ``duel.py``: this miner's outputs against the leader's (DINO-family embeddings, a VLM judge).
"""
