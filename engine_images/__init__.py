"""What runs in pods and on a laptop: ``router`` (the per-decode-cluster router), ``vllm``
(engine launch, the CPU compatibility shim, the tiny model) and ``local`` (the runtime behind
``prfaas up``). Import the subpackage you need; this package imports none of them."""

__all__: list[str] = []
