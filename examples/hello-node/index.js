// An HTTP function with a dependency: escape-html escapes the name, so the greeting is
// safe to show in a page. The Functions Framework calls the exported function with an
// Express request and response (GOOGLE_FUNCTION_SIGNATURE_TYPE=http).
const escapeHtml = require('escape-html');

exports.hello_node = (req, res) => {
  const name = req.query.name || 'world';
  res.send(`Hello, ${escapeHtml(name)}!\n`);
};
