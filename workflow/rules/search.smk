# The hyper-parameter search (config search.grid; experiments/search.yaml): every combination of the grid's
# train: values is trained as its own job (a Slurm job under the cluster profile, like train), from the same
# cell stores, and scored only by its checkpoint's validation-compound mAP on the training plates. One table
# of settings vs score, best first. Nothing here runs when the grid is empty.

import copy

from snakemake.utils import validate

for _trial, _trial_config in SEARCH.items():  # every trial's train: values against the schema, before any job
    validate(copy.deepcopy(_trial_config), os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))


use rule train as search_train with:
    output:
        model=f"{R}/search/{{trial}}/model.pt",
        history=f"{R}/search/{{trial}}/training_log.csv",
    params:
        settings=lambda w: train_settings(COMPOUND_SPLIT, SEARCH[w.trial]["train"]),
    log:
        f"{R}/logs/search_train/{{trial}}.log",
    benchmark:
        f"{R}/benchmarks/search_train/{{trial}}.tsv"
    wildcard_constraints:
        trial=r"t\d+",


rule search_table:
    input:
        **{t: f"{R}/search/{t}/training_log.csv" for t in SEARCH},
    output:
        csv=f"{R}/tables/search.csv",
        md=f"{R}/tables/search.md",
    params:
        settings=settings(trials={t: {k: c["train"][k] for k in config["search"]["grid"]} for t, c in SEARCH.items()}),
    log:
        f"{R}/logs/search_table.log",
    benchmark:
        f"{R}/benchmarks/search_table.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        f"python -m cytoagg search-table {named_file_args('--logs', SEARCH, 'input')} "
        "--out-csv {output.csv:q} --out-md {output.md:q} --params {params.settings:q} 2> {log:q}"
