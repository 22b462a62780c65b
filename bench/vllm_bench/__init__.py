"""GPU benchmarks of the vLLM engine behind one entry: ``python -m bench.vllm_bench SUITE [PHASE ...]``.

Suites (``registry.SUITES``): ``gpu`` (equivalence, stress, throughput, interleaved, breakdown),
``serve`` (prepare, run), ``reward`` (reference, vllm32, colocated, http) and ``compile``
(reference, vllm32, vllm16, serving, http). Shared set-up is in ``common``; vLLM is imported only
inside phases, so ``--help`` works anywhere. The package is not called ``bench/vllm`` so that it
can never shadow the real ``vllm`` package when a script in bench/ is run by path.
"""
