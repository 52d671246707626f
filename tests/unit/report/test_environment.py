"""The environment the report records, and the line that says what made it."""


def test_the_environment_line_names_the_gpu_and_a_cuda_build():
    from edgetune.report.environment import describe, one_line

    env = describe()
    assert env["packages"]["torch"] and env["cpu_count"] >= 1 and env["cpu_features"]
    env |= {
        "commit": "abc1234",
        "code_changed": False,
        "gpu": {"name": "NVIDIA H100 80GB HBM3", "count": 2, "cuda": "12.8"},
        "llama_cpp_tools": {"source": "llama-cpp-python 0.3.36", "cmake_flags": "-DGGML_CUDA=ON -DGGML_NATIVE=OFF"},
    }
    line = one_line(env)
    assert line.startswith("Made at commit abc1234 with torch ") and "2 × NVIDIA H100 80GB HBM3 (CUDA 12.8)" in line
    assert "llama.cpp tools built from llama-cpp-python 0.3.36's source with CUDA" in line
    assert "an unknown build" in one_line(env | {"llama_cpp_tools": None}) and "commit unknown" in one_line(
        env | {"commit": None}
    )
    assert one_line(env | {"code_changed": True}).startswith(
        "Made at commit abc1234 (with uncommitted changes to src/) with"
    )
