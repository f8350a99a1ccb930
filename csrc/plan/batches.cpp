#include "plan/batches.h"

#include <algorithm>

#include "ops/gather.h"

namespace fuseprop {

// Room for the largest batch: min(batch_size, rows) rows of x and of the labels or the target.
template <typename T>
void batches_reserve(BatchBuffers<T>& buf, const BatchSource<T>& src) {
  if (!src.order) return;  // batches are used in place
  const size_t B = size_t(std::min(src.batch_size, src.rows));
  if (buf.x.size() < B * size_t(src.in)) buf.x.resize(B * size_t(src.in));
  if (src.labels && buf.labels.size() < B) buf.labels.resize(B);
  if (src.target && buf.target.size() < B * size_t(src.out)) buf.target.resize(B * size_t(src.out));
}

// x (N,IN); labels (N) or target (N,OUT); order (rows) -> one TrainPlan::step per batch
template <typename T>
BatchRun run_batches(TrainPlan<T>& plan, BatchBuffers<T>& buf, double* losses, int64_t* correct,
                     const BatchSource<T>& src, int64_t first, int64_t count, const double* lrs,
                     const int64_t* slot_group, int64_t groups, OptimizerKind optimizer, double max_grad_norm) {
  std::vector<ParamSlot<T>>& slots = plan.params();
  StepResult last{};
  for (int64_t j = 0; j < count; ++j) {
    const int64_t start = (first + j) * src.batch_size;
    const int64_t B = std::min(src.batch_size, src.rows - start);
    const T* x = src.x + start * src.in;
    const int64_t* labels = src.labels ? src.labels + start : nullptr;
    const T* target = src.target ? src.target + start * src.out : nullptr;
    if (src.order) {
      const int64_t* index = src.order + start;
      gather_rows<T>(buf.x.data(), src.x, index, B, src.in);
      x = buf.x.data();
      if (labels) {
        gather_rows<int64_t>(buf.labels.data(), src.labels, index, B, 1);
        labels = buf.labels.data();
      }
      if (target) {
        gather_rows<T>(buf.target.data(), src.target, index, B, src.out);
        target = buf.target.data();
      }
    }
    if (lrs)
      for (size_t s = 0; s < slots.size(); ++s) slots[s].hyper.lr = lrs[j * groups + slot_group[s]];

    last = plan.step(x, labels, target, B, max_grad_norm);
    losses[j] = last.loss;
    correct[j] = last.correct;
    if (last.status != StepStatus::ok) return {j, last};

    for (ParamSlot<T>& p : slots) {
      if (optimizer != OptimizerKind::sgd) ++p.step;
      else if (p.state_a) p.step = 2;
    }
  }
  return {count, last};
}

template void batches_reserve<float>(BatchBuffers<float>&, const BatchSource<float>&);
template void batches_reserve<double>(BatchBuffers<double>&, const BatchSource<double>&);
template BatchRun run_batches<float>(TrainPlan<float>&, BatchBuffers<float>&, double*, int64_t*,
                                     const BatchSource<float>&, int64_t, int64_t, const double*, const int64_t*,
                                     int64_t, OptimizerKind, double);
template BatchRun run_batches<double>(TrainPlan<double>&, BatchBuffers<double>&, double*, int64_t*,
                                      const BatchSource<double>&, int64_t, int64_t, const double*, const int64_t*,
                                      int64_t, OptimizerKind, double);

}  // namespace fuseprop
