"""vLLM 0.26 engine and its glue: paired Linear-Alignment streams and in-graph steering.

``pairing``, ``steer_tables`` and ``capture`` are pure (numpy/torch, no vLLM import) and unit-tested in CI; the
other modules import vLLM and run only on the GPU host. Design: ``DESIGN.md`` here.
"""
