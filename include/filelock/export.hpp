// SPDX-License-Identifier: MIT
#pragma once

// Symbols of the compiled libraries are hidden unless marked FILELOCK_API.
#if defined(FILELOCK_STATIC)
#define FILELOCK_API
#elif defined(FILELOCK_BUILDING)
#define FILELOCK_API __attribute__((visibility("default")))
#else
#define FILELOCK_API
#endif
