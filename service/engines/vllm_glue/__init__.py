"""vLLM 0.26 glue: paired Linear-Alignment streams and in-graph steering.

``pairing``, ``steer_tables`` and ``capture`` are pure (numpy/torch, no vLLM import) and unit-tested in CI; the
other modules import vLLM and run only on the GPU host. Design: ``docs`` in ``DESIGN.md`` here.
"""
