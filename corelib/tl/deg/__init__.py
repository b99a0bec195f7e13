"""The DEG baseline of the paper (Sec. 4.3) and deletion curves comparing it with attribution (appendix C).

:mod:`~corelib.tl.deg.table`: a unit's top-activating cells against their nearest non-activating cells, one
differential expression table per unit (on a Dask cluster when given a client). :mod:`~corelib.tl.deg.deletion`:
deletion curves of attribution, DEG and random gene orders, on in-sample or held-out cell pairs.
"""

from corelib.tl.deg.deletion import (
    CURVE_COLUMNS,
    attribution_orders,
    compare_auc,
    deg_orders,
    deletion_auc,
    deletion_curves,
    deletion_summary,
    deletion_table,
    held_out_pairs,
    random_orders,
)
from corelib.tl.deg.table import (
    DEG_ORDERS,
    PSEUDOCOUNT,
    PVAL_CUTOFF,
    deg_cells,
    deg_list_sizes,
    deg_order,
    deg_size_summary,
    deg_table,
    deg_units,
    group_rows,
    log_fold_changes,
)

__all__ = [
    "CURVE_COLUMNS",
    "DEG_ORDERS",
    "PSEUDOCOUNT",
    "PVAL_CUTOFF",
    "attribution_orders",
    "compare_auc",
    "deg_cells",
    "deg_list_sizes",
    "deg_order",
    "deg_orders",
    "deg_size_summary",
    "deg_table",
    "deg_units",
    "deletion_auc",
    "deletion_curves",
    "deletion_summary",
    "deletion_table",
    "group_rows",
    "held_out_pairs",
    "log_fold_changes",
    "random_orders",
]
