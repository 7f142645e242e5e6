// SPDX-License-Identifier: MIT
#pragma once

// Capped exponential backoff with jitter, and the clock every acquisition
// runs on.

#include <filelock/options.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <system_error>

namespace filelock::detail {

using clock = std::chrono::steady_clock;

/// Capped exponential backoff with jitter (xorshift randomness: cheap, and
/// seeded per acquisition so contenders do not move in lock-step).
class backoff {
public:
    /// The longest wait a policy may ask for.
    static constexpr clock::duration max_wait = std::chrono::hours(1);

    backoff(const backoff_policy& p, std::uint64_t seed) noexcept
        : policy_(sanitized(p)), state_(seed ? seed : 0x9e3779b97f4a7c15ull) {
        ceiling_ = policy_.initial;
    }

    /// The policy with every field clamped to its documented range (NaN
    /// included), so that no conversion below can overflow.
    static backoff_policy sanitized(backoff_policy p) noexcept {
        const auto clamp_wait = [](clock::duration lo, std::chrono::nanoseconds d) {
            return std::clamp(std::chrono::duration_cast<clock::duration>(d), lo, max_wait);
        };
        p.initial = clamp_wait(clock::duration(1), p.initial);
        p.cap = clamp_wait(p.initial, p.cap);
        p.multiplier = p.multiplier != p.multiplier ? 2.0 : std::clamp(p.multiplier, 1.0, 1000.0);
        p.jitter = p.jitter != p.jitter ? 1.0 : std::clamp(p.jitter, 0.0, 1.0);
        return p;
    }

    /// The next wait, in `[ceiling * (1 - jitter), ceiling]`; the ceiling then
    /// grows by the multiplier up to the cap.
    clock::duration next() noexcept {
        const auto ceiling = ceiling_;
        const double grown = static_cast<double>(ceiling_.count()) * policy_.multiplier;
        ceiling_ = grown >= static_cast<double>(policy_.cap.count())
                       ? policy_.cap
                       : clock::duration(static_cast<clock::rep>(grown));
        const double u = static_cast<double>(random() >> 11) * 0x1.0p-53;  // [0, 1)
        const double scale = 1.0 - policy_.jitter * u;
        return std::max(
            clock::duration(1),
            clock::duration(static_cast<clock::rep>(static_cast<double>(ceiling.count()) * scale)));
    }

    clock::duration ceiling() const noexcept { return ceiling_; }

private:
    std::uint64_t random() noexcept {
        state_ ^= state_ << 13;
        state_ ^= state_ >> 7;
        state_ ^= state_ << 17;
        return state_;
    }

    backoff_policy policy_;
    std::uint64_t state_;
    clock::duration ceiling_;
};

}  // namespace filelock::detail
