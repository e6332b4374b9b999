// orch console: refresh a page's live part in place, and upload a folder's files.
// No libraries, nothing fetched from elsewhere: the page works offline.
(function () {
  "use strict";

  function poll(live) {
    var every = parseInt(live.getAttribute("data-poll"), 10);
    var etag = null;
    function schedule() { window.setTimeout(tick, every); }
    function tick() {
      if (document.hidden) { schedule(); return; }
      var url = new URL(window.location.href);
      url.searchParams.set("fragment", "1");
      var headers = etag ? { "If-None-Match": etag } : {};
      fetch(url.toString(), { headers: headers, cache: "no-store" })
        .then(function (response) {
          live.removeAttribute("data-offline");
          if (response.status === 304) { return null; }
          etag = response.headers.get("ETag");
          return response.text();
        })
        .then(function (html) {
          if (html === null) { return; }
          var focused = document.activeElement && document.activeElement.id;
          live.innerHTML = html;
          if (focused && live.querySelector("#" + CSS.escape(focused))) {
            document.getElementById(focused).focus();
          }
        })
        .catch(function (error) {
          live.setAttribute("data-offline", "The console cannot be reached (" + error.message + "); retrying.");
        })
        .then(schedule);
    }
    schedule();
  }

  function folderUpload(form) {
    // A folder's files go with their paths inside the folder; the server zips them.
    form.addEventListener("submit", function (event) {
      var folder = form.querySelector("input[name=folder]");
      if (!folder || !folder.files.length || form.querySelector("input[name=archive]").files.length) { return; }
      event.preventDefault();
      var data = new FormData();
      Array.prototype.forEach.call(form.elements, function (el) {
        if (el.name && el.type !== "file") { data.append(el.name, el.value); }
      });
      Array.prototype.forEach.call(folder.files, function (file) {
        data.append("folder", file, file.webkitRelativePath || file.name);
      });
      fetch(form.action, { method: "POST", body: data }).then(function (response) {
        if (response.redirected) { window.location.assign(response.url); return; }
        return response.text().then(function (html) {
          document.open(); document.write(html); document.close();
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live && live.getAttribute("data-poll")) { poll(live); }
    var form = document.getElementById("deploy");
    if (form) { folderUpload(form); }
  });
})();
