# cytoagg: raw Cell Painting plates -> normalized Parquet -> trained set model -> well profiles -> mAP.
# The science lives in the `cytoagg` package (src/cytoagg); each rule calls one `cytoagg <step>`.

from snakemake.utils import min_version, validate

min_version("9.0")


# The demo config (the built-in synthetic screen, scaled down for 2 CPU cores) is read only when no --configfile
# is given: a config of one's own starts from the schema's defaults, never from the demo's plates and sizes.
# Several --configfile are applied in order, and --config last. common.smk logs which files were read.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/config_sources.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/common_features.smk"
include: "workflow/rules/feature_select.smk"
include: "workflow/rules/cellstore.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/pipelines.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summarize.smk"
include: "workflow/rules/sampling_sweep.smk"
include: "workflow/rules/diagnostics.smk"
include: "workflow/rules/saliency.smk"
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
