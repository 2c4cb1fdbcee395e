// A one-letter typo in a method name still finds it: every query word of five or more letters is
// also searched with an edit distance of one (the search index's `word~1`), beside the usual
// prefix search. The theme sends each query to its search worker as {type: 2, data: query}.
(function () {
  if (typeof Worker === "undefined") return;
  var post = Worker.prototype.postMessage;
  Worker.prototype.postMessage = function (message) {
    if (message && message.type === 2 && typeof message.data === "string") {
      var words = message.data.trim().split(/\s+/).map(function (word) {
        return /^[A-Za-z][A-Za-z0-9]{4,}$/.test(word) ? word + " " + word + "~1" : word;
      });
      message = Object.assign({}, message, { data: words.join(" ") });
    }
    var rest = Array.prototype.slice.call(arguments, 1);
    return post.apply(this, [message].concat(rest));
  };
})();
