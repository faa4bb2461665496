"""The metrics of the three papers' evaluation protocols, plus relworld's exact detector.

========================  ==================================================================
``vlm_relation``          RRNet's five questions to a vision-language judge: object and
                          relation accuracy
``detector_relation``     an open-vocabulary detector finds A and B; a box rule decides the
                          spatial relation
``clip_t``                image-prompt CLIP similarity (and ReVersion's entity score)
``clip_r``                image-predicate CLIP similarity (RelationBooth; ReVersion's relation
                          score)
``clip_i``                image-reference CLIP image similarity per entity
``dino``                  image-reference DINO class-token similarity per entity
``fid``                   Fréchet distance to a reference folder (torchmetrics)
``relworld``              relworld's exact detector: relation, object, direction accuracy
========================  ==================================================================
"""

from relgen.evaluate.metrics.base import (
    RATE,
    SCORE,
    Metric,
    build_metric,
    get_metric,
    list_metrics,
    register_metric,
)

__all__ = ["RATE", "SCORE", "Metric", "build_metric", "get_metric", "list_metrics", "register_metric"]
