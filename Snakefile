# cytoagg: raw Cell Painting plates -> normalized Parquet -> trained set model -> well profiles -> mAP.
# The science lives in the `cytoagg` package (src/cytoagg); each rule calls one `cytoagg <step>`.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/feature_select.smk"
include: "workflow/rules/cellstore.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/pipelines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summarize.smk"
include: "workflow/rules/sampling_sweep.smk"
include: "workflow/rules/diagnostics.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/search.smk"


if EXPERIMENT:  # experiments/*.yaml: the model-capacity toy experiments

    include: "workflow/rules/experiments.smk"



if not EXPERIMENT:

    report: FRONT_PAGE  # the verdict and the mAP-per-plate figure (workflow/rules/plots.smk)



rule all:
    input:
        experiment_outputs() if EXPERIMENT else all_outputs(),
    default_target: True
