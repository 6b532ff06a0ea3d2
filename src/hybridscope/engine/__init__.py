"""A compact reference hybrid inference engine (Mamba2 SSD, attention, MoE with expert parallelism).

It imports nothing of the profiler: hybridscope recognizes its modules as it recognizes HF ones.
"""
