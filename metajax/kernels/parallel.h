// Work shared between the calling thread and XLA's intra-op thread pool, for
// the kernels here (metajax/kernels/*.cc).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace metajax {

// Calls item(i) once for every i in [0, items): on the calling thread and on
// up to pool.num_threads() - 1 of the pool's threads, which take items from a
// shared atomic counter. Returns once every call has returned. A helper that
// starts after the last item is taken finds nothing to do and does not call
// item; the shared_ptr keeps the counters alive for it.
template <typename Item>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t items, const Item& item) {
  struct Counters { std::atomic<int64_t> next{0}, done{0}; };
  auto counters = std::make_shared<Counters>();
  auto run = [counters, items, &item] {
    for (int64_t i; (i = counters->next.fetch_add(1)) < items;) {
      item(i);
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t helpers = std::min(threads, items) - 1;
  for (int64_t h = 0; h < helpers; ++h) {
    auto task = run;   // a copy: Schedule takes its task by rvalue
    pool.Schedule(std::move(task));
  }
  run();
  while (counters->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
}

}  // namespace metajax
