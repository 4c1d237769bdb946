"""The work counter's HLO reading (JAX, TensorFlow under XLA), on hand-written HLO."""

from normbench import work

HLO = """HloModule jit_f, entry_computation_layout={(f32[8,16]{1,0})->f32[8,16]{1,0}}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.1 = f32[] add(%x, %y)
}

%cheap (p: (f32[8,16], f32[8])) -> f32[8,16] {
  %p = (f32[8,16]{1,0}, f32[8]{0}) parameter(0)
  %a = f32[8,16]{1,0} get-tuple-element(%p), index=0
  ROOT %copy.1 = f32[8,16]{1,0} copy(%a)
}

%dear (q: (f32[8,16], f32[8])) -> f32[8,16] {
  %q = (f32[8,16]{1,0}, f32[8]{0}) parameter(0)
  %b = f32[8,16]{1,0} get-tuple-element(%q), index=0
  %m = f32[8,16]{1,0} multiply(%b, %b)
  ROOT %n = f32[8,16]{1,0} negate(%m)
}

ENTRY %main.9 (Arg_0.1: f32[8,16]) -> f32[8,16] {
  %Arg_0.1 = f32[8,16]{1,0} parameter(0)
  %constant.2 = f32[] constant(0)
  %reduce.3 = f32[8]{0} reduce(%Arg_0.1, %constant.2), dimensions={1}, to_apply=%add
  %tuple.4 = (f32[8,16]{1,0}, f32[8]{0}) tuple(%Arg_0.1, %reduce.3)
  %pred.5 = pred[] constant(true)
  ROOT %conditional.6 = f32[8,16]{1,0} conditional(%pred.5, %tuple.4, %tuple.4), true_computation=%cheap, false_computation=%dear, metadata={op_name="cond"}
}
"""


def test_shape_bytes():
    assert work.hlo_shape_bytes("f32[8,56,56,256]{3,2,1,0}") == 8 * 56 * 56 * 256 * 4
    assert work.hlo_shape_bytes("(f32[8,16]{1,0}, bf16[4]{0}, pred[])") == 8 * 16 * 4 + 4 * 2 + 1
    assert work.hlo_shape_bytes("f32[]") == 4


def test_parse_hlo_finds_the_entry_and_its_instructions():
    computations, entry = work.parse_hlo(HLO)
    assert entry == "main.9"
    assert set(computations) == {"add", "cheap", "dear", "main.9"}
    name, shape, opcode, operands, attrs = computations["main.9"][2]
    assert (name, opcode) == ("reduce.3", "reduce") and "to_apply=%add" in attrs


def test_cost_counts_each_instruction_once_and_both_branches_as_bounds():
    cost = work.hlo_cost(HLO)
    x = 8 * 16 * 4
    reduce = x + 4 + 8 * 4  # reads x and the init value, writes 8 floats
    assert cost["ops"] == 1 + 1  # the reduce, then the cheap branch's copy
    assert cost["bytes"] == reduce + 2 * x  # the copy: read x, write x
    assert cost["bytes_max"] == reduce + 5 * x  # multiply: reads x as both operands, writes x; negate: 2x
