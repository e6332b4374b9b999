// A CloudEvent Node.js function that reports each event it receives by POSTing it to
// RECORD_URL (the test's receiver), like tests/functions/event_recorder does in Python.
// Built with GOOGLE_FUNCTION_SIGNATURE_TYPE=cloudevent; no dependencies, no lock file.
exports.record = async (event) => {
  const attributes = {};
  for (const key of ['id', 'source', 'specversion', 'type', 'subject', 'time']) {
    if (event[key] !== undefined) attributes[key] = String(event[key]);
  }
  const response = await fetch(process.env.RECORD_URL, {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({kind: 'cloudevent', attributes, data: event.data}),
  });
  if (!response.ok) throw new Error(`recorder answered ${response.status}`);
};
