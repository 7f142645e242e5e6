// SPDX-License-Identifier: MIT
#pragma once

// One entry of a platform's table of system calls (src/posix/sys.hpp,
// src/win32/sys.hpp), through which tests inject failures.

#include <atomic>

namespace filelock::detail {

/// One entry of the table: a function pointer read and replaced atomically
/// (a background thread of the library may call through the table while a
/// test replaces an entry).
template <class F>
class sys_entry;
template <class R, class... A>
class sys_entry<R(A...)> {
public:
    using function = R (*)(A...);
    constexpr sys_entry(function f) noexcept : f_(f) {}
    sys_entry(const sys_entry& o) noexcept : f_(o.f_.load(std::memory_order_relaxed)) {}
    sys_entry& operator=(const sys_entry& o) noexcept {
        f_.store(o.f_.load(std::memory_order_relaxed), std::memory_order_relaxed);
        return *this;
    }
    sys_entry& operator=(function f) noexcept {
        f_.store(f, std::memory_order_relaxed);
        return *this;
    }
    R operator()(A... a) const { return f_.load(std::memory_order_relaxed)(a...); }

private:
    std::atomic<function> f_;
};

}  // namespace filelock::detail
