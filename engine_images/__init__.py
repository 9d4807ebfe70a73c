"""What runs inside pods: the router, engine launch/config, the local runtime behind
``prfaas up``."""

__all__: list[str] = []
