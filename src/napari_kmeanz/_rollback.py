"""What a widget run changes in the viewer, recorded so that a run whose results are
discarded (its source layer removed, or its data replaced, mid-run) leaves the viewer as it
found it: the layers it added are removed, the layers of an earlier run that its previews
updated get back what they showed, and the layers it hid are shown again. Labels painted by
hand in the meantime are never removed or overwritten.

A layer's data is not copied: a preview replaces it (it does not write into it), so keeping
the array it held is enough, and so it is for its other attributes, but for ``metadata``,
which napari clears and refills in place: a copy of it is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._layers import FIXED_AT_CREATION, PREFIX


@dataclass(eq=False)
class Rollback:
    """The changes of one run to the layers of ``viewer``, undone by :meth:`undo`."""

    viewer: object
    added: list = field(default_factory=list)  # layers the run added
    saved: dict = field(default_factory=dict)  # layer -> (data, {attribute: value}) before
    replaced: dict = field(default_factory=dict)  # layer taken out -> its stand-in
    hidden: list = field(default_factory=list)  # layers the run hid

    def hide(self, layer) -> None:
        if layer.visible:
            layer.visible = False
            self.hidden.append(layer)

    def before(self, existing, kwargs: dict):
        """Record ``existing`` (a layer about to be updated from ``kwargs``, or None) the
        first time the run touches it; returns its index in the layer list (None: absent)."""
        layers = self.viewer.layers
        if existing is None or existing not in layers:
            return None
        if existing not in self.saved:
            names = [k for k in kwargs if k not in ("name", *FIXED_AT_CREATION)]
            attrs = {k: getattr(existing, k) for k in names if hasattr(existing, k)}
            if "metadata" in attrs:
                attrs["metadata"] = dict(attrs["metadata"])
            self.saved[existing] = (existing.data, attrs)
        return layers.index(existing)

    def after(self, existing, index, layer) -> None:
        """Record ``layer``, what updating ``existing`` (at ``index``) gave."""
        if layer is existing or layer in self.added:
            return
        if index is None:
            self.added.append(layer)
        elif existing not in self.replaced:  # (taken out for a layer of another shape)
            self.replaced[existing] = layer

    def undo(self) -> None:
        layers = self.viewer.layers
        for layer in self.added:
            if layer in layers and not _painted(layer):
                layers.remove(layer)
        for original, stand_in in self.replaced.items():
            if stand_in in layers and not _painted(stand_in):
                index = layers.index(stand_in)
                layers.remove(stand_in)
                layers.insert(index, original)
        for layer, (data, attrs) in self.saved.items():
            if layer in layers and not _painted(layer):
                for key, value in attrs.items():
                    setattr(layer, key, value)
                layer.data = data
        for layer in self.hidden:
            if layer in layers:
                layer.visible = True


def _painted(layer) -> bool:
    return bool(layer.metadata.get(PREFIX, {}).get("edited"))
