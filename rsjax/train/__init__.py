"""Training: ``hsi`` (MS2A-Net and the autoencoder baselines), ``embed`` (SNCA-CE and the metric
learning baselines), ``checkpoint`` (atomic orbax checkpoints); what both loops share is here."""
from __future__ import annotations


def apply_model(model, params, batch_stats, x):
    """Forward pass in training mode, normalising with batch statistics; returns the output and the
    updated BatchNorm statistics (``batch_stats`` itself for a model without BatchNorm)."""
    out, mutated = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                               mutable=["batch_stats"])
    return out, mutated.get("batch_stats", batch_stats)
