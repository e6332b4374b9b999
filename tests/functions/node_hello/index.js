// An HTTP Node.js function with one dependency (ms), for localcloud's build and run tests.
const fs = require('fs');
const ms = require('ms');

exports.hello = (req, res) => {
  let devDependencyInstalled = true;
  try {
    require.resolve('left-pad');
  } catch {
    devDependencyInstalled = false;
  }
  res.json({
    greeting: `hello, ${req.query.name || 'world'}`,
    minute: ms(60000),
    node: process.version,
    devDependencyInstalled,
    target: process.env.FUNCTION_TARGET,
    // Which of the paths the test names this function can see (the sandbox's bounds).
    sees: Object.fromEntries(
      JSON.parse(process.env.PROBE_PATHS || '[]').map((p) => [p, fs.existsSync(p)]),
    ),
  });
};
