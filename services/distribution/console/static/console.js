// The console's only script: copy buttons for the pull commands (progressive enhancement: without it,
// the commands are plain text to select). No inline code anywhere, so the CSP allows scripts from 'self' only.
"use strict";
(function () {
  function announce(text) {
    var status = document.getElementById("copy-status");
    if (status) {
      status.textContent = text;
    }
  }

  function copyBySelection(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    var copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (e) {
      copied = false;
    }
    document.body.removeChild(area);
    return copied;
  }

  function copy(button) {
    var text = button.getAttribute("data-copy") || "";
    var done = function () {
      button.setAttribute("data-copied", "true");
      announce("Copied: " + text);
    };
    var fallback = function () {
      if (copyBySelection(text)) {
        done();
      } else {
        announce("Could not copy; select the command and copy it.");
      }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var buttons = document.querySelectorAll("button[data-copy]");
    for (var i = 0; i < buttons.length; i++) {
      (function (button) {
        button.hidden = false;
        button.addEventListener("click", function () { copy(button); });
      })(buttons[i]);
    }
  });
})();
