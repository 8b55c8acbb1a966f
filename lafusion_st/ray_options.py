"""Settings of a Ray run, free of heavy imports so that the command line can build them before torch loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INSTALL_HINT = "pip install lafusion[ray]"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes.

    Args:
        address: A running cluster (``host:port`` of its head, ``ray://host:port`` for Ray Client, or
            ``auto``); ``None`` starts a local cluster on this machine.
        num_actors: Actors in the pool, each holding one copy of the model.
        cpus_per_actor: CPUs reserved per actor (torch then uses as many threads). Leave CPUs free for Ray
            Data's own tasks: a pool that takes every CPU starves them and the run hangs.
        gpus_per_actor: GPUs per actor; fractions let several small models share one GPU (``0.5`` = two
            actors a GPU).
    """

    address: str | None = None
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.num_actors, bool) or not isinstance(self.num_actors, int) or self.num_actors < 1:
            raise ValueError(f"num_actors must be a positive integer, got {self.num_actors!r}.")
        if not self.cpus_per_actor > 0:
            raise ValueError(f"cpus_per_actor must be positive, got {self.cpus_per_actor!r}.")
        if not self.gpus_per_actor >= 0:
            raise ValueError(f"gpus_per_actor must be 0 or more (fractions allowed), got {self.gpus_per_actor!r}.")

    def map_batches_kwargs(self) -> dict[str, Any]:
        """The actor-pool arguments of ``Dataset.map_batches``."""
        from ray.data import ActorPoolStrategy

        return {
            "compute": ActorPoolStrategy(size=self.num_actors),
            "num_cpus": self.cpus_per_actor,
            "num_gpus": self.gpus_per_actor,
        }

    @classmethod
    def from_args(cls, args: Any) -> RayOptions:
        """The options given to the command line by :func:`add_ray_arguments`."""
        return cls(args.address, args.num_actors, args.cpus_per_actor, args.gpus_per_actor)


def add_ray_arguments(parser: Any) -> None:
    """``--engine`` and the Ray options of ``lafusion embed`` and ``lafusion scan`` (an argparse parser)."""
    from lafusion_st.modes import ENGINES

    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help=f"local: this process; ray: a Ray Data actor pool, same vectors ({INSTALL_HINT}) (default: local)",
    )
    group = parser.add_argument_group("Ray engine")
    group.add_argument("--address", help="Ray cluster head host:port, ray://host:port or auto (default: a local one)")
    group.add_argument("--num-actors", type=int, default=1, help="actors, each holding the model once (default: 1)")
    group.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (torch threads) per actor (default: 1)")
    group.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs per actor; 0.5 = two actors a GPU (default: 0)"
    )
