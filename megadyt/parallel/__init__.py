"""Distributed start-up, CPU shims for megatron-core, and the DeepSpeed mpu adapter."""
