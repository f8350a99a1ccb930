// Many training steps in one call: batch after batch of a dataset through a TrainPlan, each batch
// gathered from the rows an order names (a shuffled epoch), with no Python between them. What fit
// runs for a stretch of an epoch; the result is that of one TrainPlan::step per batch, bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "plan/network.h"

namespace fuseprop {

// The dataset and how it is cut into batches. x (N,IN) row-major; labels (N) in [0, OUT) for
// cross-entropy, else target (N,OUT): the other one is null. order (rows) in [0, N): batch b holds
// rows order[b*batch_size .. min((b+1)*batch_size, rows)) of x, gathered; order null: rows
// b*batch_size .. min((b+1)*batch_size, rows) of x itself, used in place (rows = N). Checked by the caller.
template <typename T>
struct BatchSource {
  const T* x;
  const int64_t* labels;
  const T* target;
  const int64_t* order;
  int64_t rows, batch_size;
  int64_t in, out;
};

// Where each batch is gathered: x (batch_size,IN), labels (batch_size), target (batch_size,OUT). The
// caller sizes them (batches_reserve) before the run, so the run itself allocates nothing.
template <typename T>
struct BatchBuffers {
  std::vector<T> x;
  std::vector<int64_t> labels;
  std::vector<T> target;
};

template <typename T>
void batches_reserve(BatchBuffers<T>& buf, const BatchSource<T>& src);

struct BatchRun {
  int64_t done;     // batches whose step returned ok
  StepResult last;  // the last step run: the one that failed when done < count
};

// Runs batches first .. first+count-1 (count >= 1; they exist), stopping at the first step that does
// not return ok. The plan's slots carry the first batch's hyper-parameters and step counts; before
// batch first+j, lrs (count, groups), when not null, sets each slot's lr to lrs[j*groups + its group]
// (slot_group: per slot). After each update the step counts move on as the caller would give them for
// the next step: Adam's and AdamW's by one; SGD's to 2 for a slot with a momentum buffer (its first
// update has run). losses[j], correct[j]: batch first+j's loss and correct predictions (as StepResult).
template <typename T>
BatchRun run_batches(TrainPlan<T>& plan, BatchBuffers<T>& buf, double* losses, int64_t* correct,
                     const BatchSource<T>& src, int64_t first, int64_t count, const double* lrs,
                     const int64_t* slot_group, int64_t groups, OptimizerKind optimizer, double max_grad_norm);

}  // namespace fuseprop
