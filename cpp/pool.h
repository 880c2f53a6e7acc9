// A process-wide pool of worker threads for the scan drivers (layer 4 of STYLE.md).
//
// run_parallel(parts, fn) runs fn(0) ... fn(parts - 1), each exactly once, and returns
// when all have finished. The calling thread runs parts itself, claiming them from the
// same counter as the pooled workers, so a call never waits for a worker to become free:
// when the pool is busy with other callers' jobs (several Python threads searching at
// once, the GIL released), or a worker is slow to wake, the caller simply runs more of
// its own parts. A part is therefore not tied to a thread, and parts must not wait for
// one another.
//
// Exceptions: the first exception a part throws is rethrown on the calling thread once
// every part has finished; the other parts still run.
//
// Lifetime: the workers start on first use and are never stopped or joined. At exit they
// sleep on a condition variable inside a pool that is deliberately never destroyed: a
// static pool's destructor would run during interpreter shutdown, when joining threads
// can hang (a worker still inside a daemon thread's search) and destroying a condition
// variable that workers wait on is undefined. The process's exit ends the threads.
//
// fork(): a child inherits none of the workers, and the pool's locks may have been held
// by threads that do not exist there. A pthread_atfork handler makes the child abandon
// the parent's pool (leaked, never touched again) and start a fresh one on its next
// search.
#pragma once

#include <type_traits>

namespace cofisearch {

using PartFn = void (*)(void* context, int part);

// Type-erased form of run_parallel: calls fn(context, part) for every part.
void run_parts(int parts, PartFn fn, void* context);

template <class Fn>
void run_parallel(int parts, Fn&& fn) {
  if (parts <= 1) {
    if (parts == 1) fn(0);
    return;
  }
  using F = std::remove_reference_t<Fn>;
  run_parts(parts, [](void* c, int part) { (*static_cast<F*>(c))(part); },
            const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace cofisearch
