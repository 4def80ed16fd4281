"""Li et al. 2018 with the paper's defaults: P = 16, Table 2's data (80% annotated + 50%
unannotated); `li2018_table1.py` and `li2018_table2.py` are the two tables' experiments.

Arguments (`--config=configs/li2018.py:ARG`, comma-separated): `tiny` (smoke mode), `grid=P`,
and the data ratios of Figs. 4-6, `annotated=F` and `unannotated=F` (fractions of ALL
annotated / unannotated images; `unannotated=1.0` is Fig. 5's "100%", which also trains on the
test fold's unannotated images, see `nih.li2018_split`), e.g. `:annotated=0.4,unannotated=1.0`.
"""

from chestxray_tf.training import defaults


def get_config(arg=None):
    args = defaults.parse_arg(arg, grid=int, annotated=float, unannotated=float)
    config = defaults.base_config("li2018")
    config.name = "li2018"
    config.model.grid = args.get("grid", config.model.grid)
    config.data.annotated_fraction = args.get("annotated", config.data.annotated_fraction)
    config.data.unannotated_fraction = args.get("unannotated",
                                                config.data.unannotated_fraction)
    if "annotated" in args or "unannotated" in args:
        config.name = (f"li2018_a{config.data.annotated_fraction:g}"
                       f"_u{config.data.unannotated_fraction:g}")
        config.eval.experiment = ""
    return defaults.smoke(config) if args["tiny"] else config
