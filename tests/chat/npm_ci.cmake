# The chat fixture: install the official Slack and Mattermost clients (and
# ws, which the fakes use) into the build directory.
# Called as: cmake -DSRC=tests/chat -DDST=build/tests/chat -DNPM=npm -P npm_ci.cmake
# `npm ci` installs exactly package-lock.json; it is skipped while the
# installed copy matches the lock file (same scheme as tests/e2e/npm_ci.cmake).
configure_file(${SRC}/package.json ${DST}/package.json COPYONLY)
configure_file(${SRC}/package-lock.json ${DST}/package-lock.json COPYONLY)
set(stamp ${DST}/node_modules/.baton-lock)
file(SHA256 ${DST}/package-lock.json want)
if(EXISTS ${stamp} AND EXISTS ${DST}/node_modules/ws/package.json
   AND EXISTS ${DST}/node_modules/@slack/socket-mode/package.json
   AND EXISTS ${DST}/node_modules/@mattermost/client/package.json)
  file(READ ${stamp} have)
  if(have STREQUAL want)
    message(STATUS "chat clients already installed (package-lock.json unchanged)")
    return()
  endif()
endif()
execute_process(COMMAND ${NPM} ci --no-audit --no-fund --loglevel=error
                WORKING_DIRECTORY ${DST}
                RESULT_VARIABLE rc
                TIMEOUT 280)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "npm ci in ${DST} failed (${rc}); the chat tests need network access "
                      "to the npm registry once, or a filled npm cache")
endif()
file(WRITE ${stamp} "${want}")
