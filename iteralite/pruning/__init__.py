"""Dependency-aware structured pruning, one job per module:

- groups.py: the group types (which tensor slices go together); model_groups.py: a config's groups, as its
  architecture declares them;
- criteria.py: importance criteria and the calibration pass that feeds the data-aware ones;
- planner.py: a parameter target -> cut ratio per group kind -> channels kept per group;
- surgery.py: choosing the channels to keep, and slicing them out of a model.

A `Group` lists every tensor slice that must go when one of its channels goes (after Torch-Pruning's groups):
- ssm_channels (per layer, d_inner): in_proj rows of x and z, conv1d channel, delta_proj rows and columns,
  B columns, C rows, D entries, inner norm entries, out_proj columns;
- expert_hidden (per expert): w1 rows and bias, w2 columns;
- experts (per layer): the whole expert and its router row (top_k is clamped to the experts left);
- width (d_model): embedding and position-embedding columns, every d_model-wide norm, in_proj and router and w1
  columns, out_proj and w2 rows (and w2 bias);
- ssm_blocks, moe_blocks (depth): one channel per layer that has such a block; removing it removes every tensor of
  the block, and the residual stream passes the layer unchanged;
- vocab (where the tokenizer reaches fewer rows than the table has): the rows past its ids, which go at every target.
Never pruned: the SSM state dimension (A_log, the n axis of B and C) and the rows a token id reaches.
These are the selective-scan architecture's groups; the Itera-Lite architecture declares its own, of the same kinds
(each architecture's groups.py; model_groups.build_groups returns a config's).

Pruning slices the state dict and rebuilds an ordinary model of the same architecture from a smaller config: nothing
is masked. In the selective-scan architecture its outputs equal the dense model's with the same channels masked to
zero (`masked_model`, the semantics the tests compare with); in the Itera-Lite architecture they do for hidden units,
experts and blocks, and for SSM channels and width once the step size and the LayerNorms take only the survivors
(docs/design.md, "The Itera-Lite architecture").
"""
