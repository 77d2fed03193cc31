/*
 * console.h - the browser console's files (index.html, console.js,
 * console.css, ...) compiled into the binary by embed.cmake.
 *
 * Lookup is an exact match against the embedded set, so no request path can
 * reach anything else ("/" means "/index.html").
 */
#ifndef BT_CONSOLE_H
#define BT_CONSOLE_H

#include <stddef.h>

struct bt_console_asset {
    const char *path; /* "/index.html" */
    const char *mime;
    const unsigned char *data;
    size_t len;
};

/* The asset at path, or NULL. */
const struct bt_console_asset *bt_console_asset(const char *path);

#endif
