# Sourced by the GPU scripts (benchmarks/smollm2/gpu_run.sh, benchmarks/speed_small_gpu.sh), from the checkout's
# root: `wheels` installs the carried wheels (.whl/: pydantic and friends) into $HOME/site where this machine
# lacks them; the caller puts $HOME/site on PYTHONPATH.
wheels() {
  python3 -c "import pydantic" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target "$HOME/site" .whl/*.whl
}
