"""The benchmark harness: run reference implementations on VTAB-1k-style tasks with a recorded
protocol, and VTAB-micro, a small benchmark that runs anywhere; and vision-language methods on
CLIP models with the few-shot and base-to-novel protocols, and VLM-micro.

This subpackage needs torch and timm (the `impls` extra), and open_clip for the CLIP protocols
(the `vlm` extra); the rest of `peft_atlas` does not.
"""
