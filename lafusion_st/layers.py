"""Layer indices in ``hidden_states`` numbering: validation and resolution.

Why: users think in "layer 12 of 30" or "the last four layers"; models think in tuple positions. One
function turns the former into the latter, rejects impossible requests with the valid range, and is
shared by every module and the selection code so all of them agree on what "layer -1" means.
"""

from __future__ import annotations

from collections.abc import Iterable

from lafusion_st.errors import InvalidArgumentError


def resolve_layers(layers: Iterable[int], num_hidden_layers: int) -> list[int]:
    """Turn layer indices into sorted, non-negative ``hidden_states`` positions.

    Args:
        layers: Indices where 0 is the embedding output and ``num_hidden_layers`` the last transformer
            layer; negative indices count from the end (-1 = last layer).
        num_hidden_layers: Number of transformer layers ``L`` of the model (``hidden_states`` has ``L + 1``
            entries).

    Returns:
        The resolved indices in ascending order (the order fusion concatenates them in).

    Raises:
        ValueError: Empty selection, a non-integer, an index outside ``[-(L + 1), L]``, or the same layer
            named twice (e.g. ``30`` and ``-1`` of a 30-layer model).
    """
    layers = list(layers)
    if not layers:
        raise InvalidArgumentError("Select at least one layer.")
    resolved = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise InvalidArgumentError(f"Layer indices must be integers, got {layer!r}.")
        if not -(num_hidden_layers + 1) <= layer <= num_hidden_layers:
            raise InvalidArgumentError(
                f"Layer {layer} is out of range for a model with {num_hidden_layers} layers: valid indices are "
                f"0..{num_hidden_layers} (0 = embedding output) or -{num_hidden_layers + 1}..-1 from the end."
            )
        resolved.append(layer % (num_hidden_layers + 1))
    duplicates = sorted({index for index in resolved if resolved.count(index) > 1})
    if duplicates:
        raise InvalidArgumentError(f"Layers {layers} select hidden state(s) {duplicates} more than once.")
    return sorted(resolved)
