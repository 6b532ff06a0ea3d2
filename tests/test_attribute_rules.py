"""The built-in kernel-name rules (rules.toml) on real kernel names of the libraries they cover."""

from __future__ import annotations

import pytest

from hybridscope.attribute.rules import builtin_rules, match_name, parse_rules
from hybridscope.errors import BadInput

RULES = builtin_rules()


@pytest.mark.parametrize(
    ("name", "kind", "layer_type", "collective"),
    [
        # mamba_ssm / causal-conv1d CUDA, mamba_ssm & vLLM Triton SSD, vLLM mamba ops, the engine
        ("void selective_scan_fwd_kernel<Selective_Scan_fwd_kernel_traits<32, 16, 1, true, true, true, false, true, c10::BFloat16, float, c10::BFloat16> >(SSMParamsBase)", "kernel", "mamba", False),
        ("void causal_conv1d_fwd_kernel<Causal_conv1d_fwd_kernel_traits<128, 4, true, c10::BFloat16, c10::BFloat16> >(ConvParamsBase)", "kernel", "mamba", False),
        ("void causal_conv1d_update_kernel<Causal_conv1d_update_kernel_traits<64, 4, c10::BFloat16> >(ConvParamsBase)", "kernel", "mamba", False),
        ("_chunk_cumsum_fwd_kernel", "kernel", "mamba", False),
        ("_chunk_state_fwd_kernel", "kernel", "mamba", False),
        ("_state_passing_fwd_kernel", "kernel", "mamba", False),
        ("_bmm_chunk_fwd_kernel", "kernel", "mamba", False),
        ("_chunk_scan_fwd_kernel", "kernel", "mamba", False),
        ("_selective_scan_update_kernel", "kernel", "mamba", False),
        ("_causal_conv1d_fwd_kernel", "kernel", "mamba", False),
        ("_causal_conv1d_update_kernel", "kernel", "mamba", False),
        ("ssd_chunk_state_kernel", "kernel", "mamba", False),
        ("ssm_state_update_kernel", "kernel", "mamba", False),
        ("chunk_gated_delta_rule_fwd_kernel_h_blockdim64", "kernel", "mamba", False),
        # attention: FA2, FA3, PyTorch SDPA backends, cuDNN, FlashInfer, vLLM
        ("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t> >(flash::Flash_fwd_params)", "kernel", "attention", False),
        ("void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4> >(flash::Flash_fwd_params)", "kernel", "attention", False),
        ("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<flash::CollectiveMainloopFwdSm90<2> > > >(x)", "kernel", "attention", False),
        ("void pytorch_flash::flash_fwd_kernel<pytorch_flash::Flash_fwd_kernel_traits<64, 128, 128, 4> >(pytorch_flash::Flash_fwd_params)", "kernel", "attention", False),
        ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t>::Params)", "kernel", "attention", False),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1_kernel0_0", "kernel", "attention", False),
        ("void flashinfer::BatchPrefillWithPagedKVCacheKernel<flashinfer::KernelTraits<128> >(x)", "kernel", "attention", False),
        ("void flashinfer::BatchDecodeWithPagedKVCacheKernel<128u, 4u>(x)", "kernel", "attention", False),
        ("void vllm::paged_attention_v2_kernel<__nv_bfloat16, 128, 16, 128, 512>(x)", "kernel", "attention", False),
        ("void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>(x)", "kernel", "attention", False),
        ("kernel_unified_attention_2d", "kernel", "attention", False),
        # MoE: vLLM fused MoE, routing, DeepEP
        ("fused_moe_kernel", "kernel", "moe_experts", False),
        ("void vllm::moe::moe_align_block_size_kernel<int>(x)", "kernel", "moe_router", False),
        ("void vllm::moe::topkGatingSoftmax<4, 128, 4, 16>(x)", "kernel", "moe_router", False),
        ("void vllm::moe::moe_sum_kernel<__nv_bfloat16, 2>(x)", "kernel", "moe_experts", False),
        ("void deep_ep::intranode::dispatch<8, 768, 8192>(x)", "kernel", "moe_comm", False),
        ("void deep_ep::internode_ll::combine<8>(x)", "kernel", "moe_comm", False),
        # collectives
        ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "kernel", "comm", True),
        ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", "kernel", "comm", True),
        ("ncclSymkDevKernel_AllGather_LL(ncclSymkDevWorkArgs4K)", "kernel", "comm", True),
        ("void vllm::cross_device_reduce_1stage<__nv_bfloat16, 8>(x)", "kernel", "comm", True),
        # memory, norm, sampling, torch.compile
        ("Memcpy HtoD (Pageable -> Device)", "memcpy", "memory", False),
        ("Memset (Device)", "memset", "memory", False),
        ("void vllm::fused_add_rms_norm_kernel<c10::BFloat16, 8>(x)", "kernel", "norm", False),
        ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>(x)", "kernel", "norm", False),
        ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "kernel", "norm", False),
        ("void flashinfer::sampling::TopKTopPSamplingFromProbKernel<1024u>(x)", "kernel", "sampling", False),
        ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>, unsigned int, long, 4, 4> >(x)", "kernel", "sampling", False),
    ],
)
def test_builtin_rules(name, kind, layer_type, collective):
    hit = match_name(RULES, name, kind)
    assert hit is not None, name
    assert (hit.layer_type, hit.collective) == (layer_type, collective)


@pytest.mark.parametrize(
    "name",
    [
        # generic kernels: only a scope can say which layer they belong to
        "nvjet_sm90_tst_64x8_64x16_2x1_v_bz_TNT",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, float, float>, unsigned int, float, 4, 4> >(x)",
        "triton_poi_fused_add_mul_silu_0",
        "void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel_generic<c10::BFloat16, int>(x)",
        "void at::native::sbtopk::gatherTopK<float, unsigned int, 2, false>(x)",
    ],
)
def test_generic_names_have_no_rule(name):
    assert match_name(RULES, name, "kernel") is None


def test_memory_rule_only_for_memcpy_memset_kinds():
    assert match_name(RULES, "Memcpy HtoD (Pageable -> Device)", "kernel") is None


def test_rule_order_first_match_wins():
    rules = parse_rules('[[rule]]\npattern = "a"\nlayer_type = "mamba"\n'
                        '[[rule]]\npattern = "ab"\nlayer_type = "attention"\n', "t")
    assert match_name(rules, "ab").layer_type == "mamba"
    assert match_name(rules, "xyz") is None


def test_rule_not_a_table():
    with pytest.raises(BadInput, match="expected a table"):
        parse_rules('rule = ["x"]\n', "t")
