// The desk's API over fetch, shared by the desktop's pages: same origin (the
// session is an HttpOnly cookie), JSON in and out; a failure throws an Error
// with the API's message and the HTTP status.
"use strict";

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) {
    const err = new Error(data && data.message ? data.message : r.statusText);
    err.status = r.status;
    throw err;
  }
  return data;
}
