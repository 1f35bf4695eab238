# Effective rank of the model's pooled features and head outputs (and of the mean baseline) on the
# held-out plates' wells.


rule effective_rank:
    input:
        normalized=expand(f"{R}/normalized/{{plate}}.parquet", plate=DIAGNOSTIC_PLATES),
        model=model_path(),
        features=f"{R}/features.txt",
    output:
        summary=report(
            f"{R}/tables/effective_rank.csv", caption="../report/effective_rank_table.rst", category="5. Model"
        ),
        spectra=f"{R}/tables/effective_rank_spectra.csv",
    params:
        settings=settings(annotation=ANNOTATION, device=TORCH_SIDE_DEVICE),
    log:
        f"{R}/logs/effective_rank.log",
    benchmark:
        f"{R}/benchmarks/effective_rank.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=3, floor=1500),
        runtime=runtime_from_input(floor=10, per_gb=20),
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg effective-rank --normalized {input.normalized:q} "
        "--checkpoint {input.model:q} --features {input.features:q} --out-summary {output.summary:q} "
        "--out-spectra {output.spectra:q} --threads {threads} --params {params.settings:q} 2> {log:q}"
