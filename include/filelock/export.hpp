// SPDX-License-Identifier: MIT
#pragma once

// Symbols of the compiled libraries are hidden unless marked FILELOCK_API.
// On Windows the libraries are built static (see the README, "Windows").
#if defined(FILELOCK_STATIC) || defined(_WIN32)
#define FILELOCK_API
#elif defined(FILELOCK_BUILDING)
#define FILELOCK_API __attribute__((visibility("default")))
#else
#define FILELOCK_API
#endif
